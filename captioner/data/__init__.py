"""Captions and data sources: the datasets that fill `data/raw/`, caption cleaning and the vocabulary, the clean_text and tokenize steps."""
