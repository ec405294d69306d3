"""Run manifests on an embedded Ray instance (`raylight run`)."""
