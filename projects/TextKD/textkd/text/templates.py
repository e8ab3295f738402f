"""Prompt templates of the CLIP text bank (METHODS.md section 2)."""

DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a photo of the {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "a photo of a {} in the scene.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a cropped photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of the {}.",
]
