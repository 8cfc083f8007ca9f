"""`noisecraft eval`: a judge classifier, metrics, and the prompt-adherence / fidelity evaluation."""
