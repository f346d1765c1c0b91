"""Fine-tuning: LoRA, losses, SFT batches, the jitted training loop, checkpoints and export."""
