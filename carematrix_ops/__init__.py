"""Operations: the ``carematrix`` command line, deployment, the process supervisor, the
demo hospital systems. Runs in the operator's shell, never inside Synapse or the appservice.
"""
