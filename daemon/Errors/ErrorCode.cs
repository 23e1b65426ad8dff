namespace DirBackup.Errors;

/// <summary>Stable error codes of the protocol; protocol/catalog.json names each one, and a test keeps the two equal.</summary>
public enum ErrorCode
{
    ParseError = -32700,
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    IncompatibleProtocol = 1001,
    HelloRequired = 1002,
    PeerNotAllowed = 1003,
    InvalidVolumeName = 1004,
    NotFound = 1005,
    StorageUnavailable = 1006,
    Protected = 1007,
    HasDependents = 1008,
    Busy = 1009,
    NotSupported = 1010,
    NotImplementedYet = 1011,
    UnsupportedAttribute = 1012,
    InvalidValue = 1013,
    IoError = 1014,
    Cancelled = 1015,
    InternalError = 1016,
}

public static class ErrorCodeNames
{
    /// <summary>The catalogue's kebab-case name of a code (ParseError -> parse-error).</summary>
    public static string Name(this ErrorCode code)
    {
        var pascal = code.ToString();
        var sb = new System.Text.StringBuilder(pascal.Length + 4);
        for (int i = 0; i < pascal.Length; i++)
        {
            char c = pascal[i];
            if (char.IsUpper(c) && i > 0)
            {
                sb.Append('-');
            }
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }
}
