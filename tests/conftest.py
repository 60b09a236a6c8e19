"""Shared test setup: offline models, quiet tokenizers, and the repo's data root."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
