"""Input fields as strict as the schema they document: DRF's CharField turns a number into
a string, so `{"slug": 0}` would pass where the schema says a string is needed."""

from django.core.validators import RegexValidator
from rest_framework import serializers


# PostgreSQL stores U+0000 in neither text nor jsonb: refused at the door (a 400 naming
# the field, not a 500 from the database), and the pattern says so in the schema.
NO_NUL = RegexValidator(r"^[^\x00]*$", "Must not contain NUL characters.")
# Not only white space, and no NUL.
NOT_BLANK = RegexValidator(r"^[^\x00]*[^\s\x00][^\x00]*$", "Must hold something other than white space, and no NUL.")


class _Strict:
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_Strict, serializers.CharField):
    def __init__(self, **kwargs):
        kwargs["validators"] = kwargs.get("validators") or [NO_NUL]
        super().__init__(**kwargs)


class StrictSlugField(_Strict, serializers.SlugField):
    """A slug's own pattern already leaves NUL out."""


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data
