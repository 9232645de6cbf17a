"""The Anthropic Messages API dialect: ``/v1/messages``, ``/v1/messages/count_tokens``.

``parse`` turns a request body into the relay's conversation model, ``encode``
writes the answer as Anthropic's event stream or one ``message`` body, ``errors``
gives the gateway's errors Anthropic's envelope and statuses, ``models`` maps
Claude model names to the gateway's models, and ``handler`` ties them to the relay.
"""
