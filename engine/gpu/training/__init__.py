"""SDXL DreamBooth LoRA training on the GPU: the loop, photo and class-image caches, checkpoints and the run service (`service.execute_run`)."""
