"""Training pieces that `train.py` drives: caption tables, datasets and samplers (`data`), the synthetic demo set
(`synthetic`), the demo tokenizer (`tokenization`), fine-tuning regimes (`regimes`) and checkpoints (`checkpoints`)."""
