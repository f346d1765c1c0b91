"""Abstention: SFT labels from uncertainties, correctness judges, Accuracy/Engagement/AED."""
