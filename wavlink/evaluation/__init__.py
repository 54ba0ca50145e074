"""Evaluation: benchmark readers (`readers`), metrics (`metrics`, numpy only), the length-sorted embedding loop
(`embedding`), retrieval / zero-shot / multiple-choice tasks (`tasks`), reports (`report`) and `wavlink-eval`
(`cli`)."""
