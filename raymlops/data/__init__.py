"""Data adapters on Ray Data: ingestion, profiling, validation, preparation and the synthetic churn generator."""
