"""Human feedback: comparison pairs out (our page, Label Studio, Argilla), labels back in as a data version."""
