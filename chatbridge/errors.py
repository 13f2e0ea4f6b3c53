"""The one exception type for problems a user fixes: a setting, a path, a file.

Its message is one line that names the file, key or path and says what to do. Entry points print it as `error: ...`
and exit with code 2; any other exception is a bug and keeps its traceback. It subclasses ValueError, so callers
that catch ValueError keep working.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """A problem in the user's settings, paths or files, described in one line."""


def load_torch_file(path: str | os.PathLike, key: str) -> Any:
    """`torch.load` of a weights file with `weights_only=True`, failing in one line that names `key` and the file.

    Unpickling arbitrary objects runs code from the file, so anything but tensors and plain containers is refused.
    """
    import torch  # here, so that importing this module stays cheap

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"{key}: {path} holds Python objects besides tensors, which are refused (unpickling could run code "
            f"from the file): {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"{key}: {path} is not a readable PyTorch file ({str(error).splitlines()[0]})") from None
