"""Photo intake: turn the files a user sends into upright RGB photos, hashes and square crops.

Pure Pillow code with no database or Discord imports, so the CLI, the bot and the tests
share it; `engine.usecases.teach` combines it with storage.
"""
