"""What a channel is made of: the :class:`Channel` contract, and the pieces webhook
channels share (URL checks, HTTP posting within a deadline)."""
