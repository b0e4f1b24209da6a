"""tuneforge: from raw domain data to a fine-tuned LLM that is evaluated, versioned and served."""

__version__ = "0.1.0"
