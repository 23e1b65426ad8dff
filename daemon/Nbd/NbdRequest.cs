namespace DirBackup.Nbd;

public enum NbdRequestKind
{
    Read,
    Write,
    Zero,
    Trim,
}

/// <summary>One request of a <see cref="NbdClient.Batch"/>; <see cref="Buffer"/> points into pinned memory.</summary>
public readonly unsafe struct NbdRequest(NbdRequestKind kind, byte* buffer, long length, long offset)
{
    public NbdRequestKind Kind { get; } = kind;
    public byte* Buffer { get; } = buffer;
    public long Length { get; } = length;
    public long Offset { get; } = offset;
}
