"""What a picture request is, which checkpoint paints it, and the parameters a PNG carries."""
