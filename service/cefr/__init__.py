"""CEFR grading (no Flask): the default model's assembly (assemble.py), text pieces (text.py), the model in a process and its cache (classifier.py)."""
