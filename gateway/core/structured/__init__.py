"""Tools and structured outputs for in-process models: tool-call parsing and grammar compilation."""
