"""A third-party SOAP client (zeep) calls tilts' SOAP endpoint from the WSDL tilts serves.

Usage: python3 zeep_person_lookup.py WSDL_URL PERSONAL_CODE [UNKNOWN_PERSONAL_CODE]
Prints one JSON object: the answer's fields, and the Fault zeep raised for the unknown person.
"""
import json
import sys

import zeep
from zeep.exceptions import Fault


def main() -> None:
    wsdl, code = sys.argv[1], sys.argv[2]
    client = zeep.Client(wsdl)
    answer = client.service.GetPerson(PersonalCode=code)
    person = answer
    out = {
        "givenName": person.GivenName,
        "familyName": person.FamilyName,
        "birthDate": person.BirthDate,
        "status": person.Status,
        "addressCode": person.DeclaredAddress.code,
        "addressText": person.DeclaredAddress._value_1,
    }
    if len(sys.argv) > 3:
        try:
            client.service.GetPerson(PersonalCode=sys.argv[3])
            out["fault"] = None
        except Fault as f:
            out["fault"] = {"code": str(f.code), "reason": f.message}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
