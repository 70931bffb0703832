"""What a visitor reads, in their language: messages marked for translation
and the gettext catalogs that translate them (docs/pages-and-languages.md)."""
