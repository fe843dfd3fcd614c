// cairo (libcairo2-dev) with its FreeType font backend; fonts from fonts-dejavu-core.
#include <cairo.h>
#include <cairo-ft.h>
#include <ft2build.h>
#include FT_FREETYPE_H
