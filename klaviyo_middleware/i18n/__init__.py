"""What a visitor reads, in their language: messages marked for translation
and the gettext catalogs that translate them (the README's "Pages and
languages")."""
