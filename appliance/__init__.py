"""Edge appliance that turns text prompts into loopable sound clips, behind a semantic cache."""

__version__ = "0.1.0"
