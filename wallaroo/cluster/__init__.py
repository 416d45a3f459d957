"""The control plane: workers forming a cluster, the exchanges between them, the supervisor of
local workers, and the external control port.
"""
