"""Data: dataset loading and format checks, chat formatting, SFT tokenization with loss masks,
packing, and the synthetic arithmetic task of the demo."""
