"""Register one customer through the front door and show which instances served each hop.

python examples/digital-bank/register.py [--front-door http://127.0.0.1:8080] [--name ...]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--front-door", default="http://127.0.0.1:8080")
    parser.add_argument("--name", default="Siti Rahma")
    parser.add_argument("--city", default="jakarta", choices=["jakarta", "surabaya"])
    args = parser.parse_args()
    # A NIK: 6 digits of region, the birth date as DDMMYY, then a 4-digit serial.
    birth = f"{random.randint(1, 28):02d}{random.randint(1, 12):02d}{random.randint(60, 99)}"
    nik = "317401" + birth + f"{random.randint(1, 9999):04d}"
    customer = {
        "name": args.name,
        "email": f"{args.name.split()[0].lower()}.{nik[-6:]}@example.com",
        "id_number": nik,
        "city": args.city,
    }
    request = urllib.request.Request(
        f"{args.front_door}/onboarding/register",
        data=json.dumps(customer).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    print(f"POST {args.front_door}/onboarding/register {json.dumps(customer)}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, body = exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:
        print(f"the front door did not answer: {exc}", file=sys.stderr)
        return 1
    print(f"HTTP {status}")
    if status != 201:
        print(json.dumps(body, indent=2))
        return 1
    print(f"customer {body['customer_id']}, account {body['account_id']}, kyc {body['kyc']}")
    for hop, instance in body["served_by"].items():
        print(f"  {hop:<14} served by {instance}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
