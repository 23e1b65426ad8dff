package PVE::Storage;

# Test stand-in: only the API version constants the plugin negotiates against (pve-storage
# 9.1.6+). The real module also loads custom plugins; tests load the plugin themselves.

use strict;
use warnings;

use constant APIVER => 15;
use constant APIAGE => 6;

1;
