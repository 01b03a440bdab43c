"""An OpenAI-compatible gateway that runs server-side tools inside the chat-completions loop."""

__version__ = "0.1.0"
