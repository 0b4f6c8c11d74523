"""Tests of jobs/ (submit, dataset) and infra/."""
