"""AI: model providers, the tool-calling agent loop, cost and budgets, vector memory and
natural-language workflow generation. Imports no SDK at import time."""
