"""Input-embedding rows of a few added tokens, held outside the LLM so that they train while its embedding is frozen.

ChatBind's stage 1 trains the projector and the rows of `<im_start>` and `<im_end>` only (docs/reference/chatbind.md
§2.6 step 5, §2.7). The reference marked the whole 32k x 4096 embedding trainable, kept an fp32 copy of it on the
GPU and detached every other position so that only those two rows received gradients (§9.15). Here the K rows are
the only parameters: `TokenRows` replaces the LLM's embedding at positions holding one of its ids, so the frozen
matrix stays frozen, the optimizer holds 2 x 4096 values, and our checkpoint stores exactly those rows.

The rows start as copies of the LLM's (after `llm.add_token_rows`), so a model built from a folder whose embedding
already holds trained rows (the merged ChatBind delta) uses them unchanged. Tokens the LLM generates are embedded by
the LLM itself; that matters only if it ever generates one of these tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class TokenRows(nn.Module):
    """Trainable input rows for `token_ids`, overriding the LLM's embedding at those ids.

    Attributes:
        token_ids: (K,) the ids (a buffer, not saved: the config and the tokenizer determine it).
        weight: (K, D) their rows, fp32 master weights.
    """

    def __init__(self, token_ids: Sequence[int], rows: Tensor) -> None:
        super().__init__()
        self.register_buffer("token_ids", torch.tensor(list(token_ids), device=rows.device), persistent=False)
        self.weight = nn.Parameter(rows.detach().float().clone())

    def forward(self, input_ids: Tensor, embeds: Tensor) -> Tensor:
        """(B, L) ids and their (B, L, D) embeddings -> the embeddings with these tokens' rows swapped in."""
        match = input_ids.unsqueeze(-1) == self.token_ids  # (B, L, K)
        rows = self.weight[match.int().argmax(-1)].to(embeds.dtype)  # (B, L, D); row 0 where nothing matches
        return torch.where(match.any(-1, keepdim=True), rows, embeds)


def token_rows_from_llm(llm: nn.Module, added_tokens: Sequence[str], tokens: Sequence[str]) -> TokenRows:
    """`TokenRows` for `tokens`, initialised from the LLM's embedding.

    Added tokens are the last `len(added_tokens)` rows, in order (`llm.add_token_rows` appends them, and so did the
    reference), which gives their ids without a tokenizer; this also works on the meta device.

    Raises:
        ValueError: a token is not among `added_tokens`.
    """
    unknown = sorted(set(tokens) - set(added_tokens))
    if unknown:
        raise ValueError(f"model.llm.token_rows {unknown} are not in model.llm.added_tokens {list(added_tokens)}")
    embedding = llm.get_input_embeddings().weight
    first = embedding.shape[0] - len(added_tokens)
    ids = [first + list(added_tokens).index(token) for token in tokens]
    return TokenRows(ids, embedding[ids])
