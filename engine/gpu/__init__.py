"""The GPU room: code that loads torch, diffusers, transformers or peft. Only workers and CLI commands that paint or train import it."""
