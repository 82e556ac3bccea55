"""tuneforge: raw text + a pretrained transformer -> a better task model, with evidence, then served.

This module must stay import-light: the CLI imports it to answer ``--help`` in well under a second,
so nothing here may import torch, transformers or peft.
"""

__version__ = "0.1.0"
