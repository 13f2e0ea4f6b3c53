"""Overrides that shrink the shipped tiny preset further for plumbing tests.

The preset (`chatbridge/configs/models/chatbridge_tiny.yaml`) is sized for the main job: pretrained stand-in towers
that the bridge can learn from in minutes. Tests of shapes, losses, checkpoints and the loop do not need that, so they
run at these smaller sizes, with random towers and nothing cached; `tests/test_train.py` also trains the preset as
shipped (`test_the_shipped_tiny_preset_trains_through_its_official_checkpoints`).
"""

SMALL = [
    "model.encoders.vision.image_size=32",
    "model.encoders.vision.width=32",
    "model.encoders.vision.checkpoint=null",
    "model.encoders.audio.embed_dim=16",
    "model.encoders.audio.width=48",
    "model.encoders.audio.ffn_dim=96",
    "model.encoders.audio.checkpoint=null",
    "model.connector.hidden_size=32",
    "model.connector.intermediate_size=64",
    "model.connector.num_query_tokens=4",
    "model.connector.temporal_embeddings=false",
    "processor.target_length=128",
    "processor.frame_sampling=null",
    "synthetic.tiny_llm.hidden_size=64",
    "synthetic.tiny_llm.pretrain_steps=300",
    "synthetic.tiny_encoders=null",
    "run.feature_cache=null",
]
