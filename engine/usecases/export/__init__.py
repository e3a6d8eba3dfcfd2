"""Taking a trained LoRA away: the A1111/ComfyUI file, the model card, and the export folder.

Torch-free (numpy and safetensors only): the bot prepares downloads in its own process.
"""

FORMATS = ("kohya", "diffusers")  # the A1111/ComfyUI single file, or diffusers' pytorch_lora_weights.safetensors
