"""The relay core: conversation model, prompt, relay loop and streaming transforms."""
