"""The engine, in two rooms a path names.

- `engine.usecases`: torch-free. What the bot, the CLI and the worker decide and record:
  queueing jobs, teaching photos, training parameters, generation requests, checkpoint choice,
  the score chart, LoRA export, prompt screening. Importing it loads no torch (tested).
- `engine.gpu`: everything that needs torch, diffusers, transformers or peft: the models,
  the generator, the training loop, the scorer, the safety checks and the worker process.
"""
