"""What a trial puts on the base model: `peft_methods.py` (the PEFT methods a space may pick, their
params and target modules), `multi_lora.py` (the multi-slot LoRA layer packed trials train at once) and
`regularization.py` (the base model's dropouts as space parameters).
"""
