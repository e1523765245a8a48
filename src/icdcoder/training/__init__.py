"""Post-training of generative coders: SFT and GRPO over TRL, rewards as plain functions, the PHI
missed-code curriculum."""
