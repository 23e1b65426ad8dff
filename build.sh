#!/bin/sh
# Entry point for humans and CI: ./build.sh [Setup|Build|Test|Bench|Run] [cake options]
set -eu
cd "$(dirname "$0")"
if ! command -v dotnet >/dev/null 2>&1; then
    echo "build.sh: the .NET 10 SDK is missing (see global.json); install it first: https://learn.microsoft.com/dotnet/core/install/linux-debian" >&2
    exit 1
fi
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
target="${1:-Test}"
[ $# -gt 0 ] && shift
dotnet tool restore >/dev/null
exec dotnet cake build.cake --target="$target" "$@"
