"""The driver↔task control plane: the messages both sides exchange (`protocol`), the job-wide
budget and its server on the driver, and the agents each task runs to lease from it and report
progress to it."""
