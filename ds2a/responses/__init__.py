"""The OpenAI Responses API dialect (``/v1/responses``) on the relay core.

``parse`` turns a request into the conversation model, ``encode`` turns answer
events into Responses stream events or one ``response`` object, ``store`` keeps
responses for ``previous_response_id`` and the retrieve/delete/input_items routes,
``handler`` wires them to HTTP.
"""
