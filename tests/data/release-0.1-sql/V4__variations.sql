-- Variations: a generation may repaint one image of an earlier generation (img2img).
-- NULL source: painted from the prompt alone. The source row may be deleted later (retention,
-- a forgotten pet); the variation keeps its own files and forgets where it came from.

ALTER TABLE generations ADD COLUMN source_generation_id INTEGER REFERENCES generations(id) ON DELETE SET NULL;
ALTER TABLE generations ADD COLUMN source_image INTEGER;          -- 1 = the source's first image
ALTER TABLE generations ADD COLUMN variation_strength REAL;       -- img2img denoising strength
