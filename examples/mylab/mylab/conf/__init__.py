# The option files of mylab's parts, one folder per vaelab config group (pkg://mylab.conf).
