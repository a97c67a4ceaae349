"""Tests of portrait.recommend."""
