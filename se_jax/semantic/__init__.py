"""Meaning: equivalence backends (NLI, LLM judge, lexical), semantic clustering, uncertainties."""
