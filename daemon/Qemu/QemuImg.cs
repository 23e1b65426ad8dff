using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace DirBackup.Qemu;

/// <summary>qemu-img, for creating and merging the backup images: the field's own tool for the qcow2 format.</summary>
public static class QemuImg
{
    public const string Tool = "qemu-img";

    /// <summary>
    /// A new qcow2 image; with a parent, its backing file is that image, named relative to the new one's directory.
    /// The size is given, so the parent is not opened (-u): checking it would open the whole chain below it, which grows
    /// with every incremental (11 ms against 8 ms over a chain of six), and the target's qemu-storage-daemon opens that
    /// chain right after anyway, failing the backup if a layer is missing.
    /// </summary>
    public static Task CreateAsync(string path, long size, string? relativeBacking, CancellationToken cancellationToken)
    {
        var args = new List<string> { "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536" };
        if (relativeBacking is not null)
        {
            args.AddRange(["-u", "-b", relativeBacking, "-F", "qcow2"]);
        }
        args.AddRange([path, size.ToString(CultureInfo.InvariantCulture)]);
        return ChildProcess.RunAsync(Tool, args, cancellationToken);
    }

    /// <summary>
    /// Writes what the top image of a chain holds into the image below it, leaving the top as it was (-d). The chain
    /// (base first) is given node by node, so no backing file name is read from a header.
    /// </summary>
    public static Task CommitAsync(IReadOnlyList<string> chainBaseFirst, CancellationToken cancellationToken)
    {
        if (chainBaseFirst.Count < 2)
        {
            throw new ArgumentException("a commit needs an image and the image below it", nameof(chainBaseFirst));
        }
        return ChildProcess.RunAsync(Tool, ["commit", "-q", "-d", ChainImage(chainBaseFirst, readOnly: false)], cancellationToken);
    }

    /// <summary>QEMU's JSON parser refuses deeper nesting; a chain nests one level per layer.</summary>
    private const int QemuJsonNesting = 1024;

    /// <summary>
    /// A chain as one image name for qemu-img: a qcow2 node per layer, each naming the node below it as its backing,
    /// the base none, so QEMU never follows a backing file name from a header. Written level by level, not by a
    /// serializer: those stop at 64 levels, and a chain of 63 backups is a daily backup's two months.
    /// </summary>
    public static string ChainImage(IReadOnlyList<string> filesBaseFirst, bool readOnly)
    {
        var output = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(output, new JsonWriterOptions { MaxDepth = QemuJsonNesting }))
        {
            for (int i = filesBaseFirst.Count - 1; i >= 0; i--)
            {
                json.WriteStartObject();
                json.WriteString("driver", "qcow2");
                if (readOnly)
                {
                    json.WriteBoolean("read-only", true);
                }
                json.WriteStartObject("file");
                json.WriteString("driver", "file");
                json.WriteString("filename", filesBaseFirst[i]);
                if (readOnly)
                {
                    json.WriteBoolean("read-only", true);
                }
                json.WriteEndObject();
                json.WritePropertyName("backing");
            }
            json.WriteNullValue();
            for (int i = 0; i < filesBaseFirst.Count; i++)
            {
                json.WriteEndObject();
            }
        }
        return "json:" + Encoding.UTF8.GetString(output.WrittenSpan);
    }
}
