"""Healing of an ablated model: DPO preference pairs, a LoRA adapter trained with TRL, checkpoint choice on
validation prompts, merged back into the weights (`dpo`)."""
