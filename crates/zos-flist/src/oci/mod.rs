//! Docker / OCI image import (in progress).
